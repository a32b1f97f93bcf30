"""Masks for your own scans (thesis §6): a trained model on DICOM, PNG, JPEG, TIFF and PGM files.

    python predict.py --checkpoint runs/cbis/best.pt --input scan.dcm --output masks/
    python predict.py --checkpoint runs/cbis/best.pt --input scans/ --output masks/ --tta
    python predict.py --checkpoint runs/cbis-1024/best.pt --input scans/ --output masks/ --save mask

The model comes from the checkpoint alone. Per image, at its original size: <stem>_mask.png (0/255,
or class indices), <stem>_prob.png and <stem>_overlay.png (--save picks), and one line with the
predicted area, so an "all black" mask is obvious; docs/deploy.md has the rules.
Exit codes: 0 done; 1 some files could not be read or written, or folders listed (the rest were
done); 2 bad flags or checkpoint.
"""
from __future__ import annotations

import sys

from engine.backends import BACKENDS
from engine.checkpoints import CheckpointError
from engine.cli import ArgumentParser, UsageError, run_command
from engine.devices import AMP_DTYPES, resolve_device
from engine.scans import OUTPUT_KINDS, run_prediction
from readers.mammograms import DataError


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="predict.py", description=__doc__.split("\n\n")[0],
                            epilog=__doc__.split("\n\n", 1)[1])
    add = parser.add_argument
    add("--checkpoint", required=True, metavar="CKPT", help="a checkpoint written by train.py")
    add("--input", nargs="+", required=True, metavar="FILE_OR_DIR",
        help="DICOM/PNG/JPEG/TIFF/PGM files or folders (searched recursively)")
    add("--output", required=True, metavar="DIR", help="where the masks, probability maps and "
        "overlays go: a folder holding no input file; a folder input's subfolders are kept, and "
        "same-named inputs get distinct names (scan_dcm, scan_png, scan_png_2)")
    add("--image-size", type=int, metavar="PIXELS", help="square input side, a multiple of 32 "
        "(default: the size the checkpoint was trained at)")
    add("--tta", action="store_true", help="average the probabilities of each image and its "
        "mirror image: vertical for mammogram models, horizontal for VOC ones")
    add("--amp", choices=list(AMP_DTYPES), default="none", help="autocast dtype of the forward "
        "pass; probabilities are computed in fp32 (default: none)")
    add("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda or cuda:N "
        "(default: auto)")
    add("--backend", choices=BACKENDS, default="auto", help="how the model runs "
        "(engine/backends.py): auto = a CUDA graph on a GPU, ONNX Runtime on a CPU when "
        "installed and --amp is none (it runs float32), else channels_last (default: auto)")
    add("--overlap", type=float, metavar="SHARE", help="overlap of the sliding windows of a model "
        "trained on patches, [0, 1) (default: the checkpoint's)")
    add("--save", nargs="+", choices=OUTPUT_KINDS, default=list(OUTPUT_KINDS),
        help="outputs written per image (default: all three, as before)")
    add("--json", metavar="FILE",
        help="also write one record per image (areas, outputs) to FILE")
    add("--overwrite", action="store_true",
        help="replace the files of an earlier prediction in --output (refused without it)")
    return parser


def main(args) -> int:
    return run_prediction(args.checkpoint, args.input, args.output, image_size=args.image_size,
                          device=resolve_device(args.device), tta=args.tta, amp=args.amp,
                          json_path=args.json, backend=args.backend, overwrite=args.overwrite,
                          overlap=args.overlap, save=tuple(args.save))


if __name__ == "__main__":
    arguments = get_args_parser().parse_args()
    sys.exit(run_command("predict.py", lambda: main(arguments),
                         (UsageError, CheckpointError, DataError)))
