"""Masks for your own scans (thesis §6): a trained model on DICOM, PNG, JPEG, TIFF and PGM files or folders.

    python predict.py --checkpoint runs/cbis/best.pt --input scan.dcm --output masks/
    python predict.py --checkpoint runs/cbis/best.pt --input scans/ --output masks/ --tta --json masks/report.json
    python predict.py --checkpoint runs/cbis-1024/best.pt --input scans/ --output masks/ --save mask

The model is rebuilt from the checkpoint alone (no architecture flags) and each image is prepared
like its training data (inference.py's docstring); a model trained on patches predicts by sliding
windows of its patch size (the checkpoint's --overlap unless given). Written per image, at its
original size, those --save names: <stem>_mask.png (binary: 0/255; multiclass: a VOC palette PNG
whose pixel values are class indices), <stem>_prob.png (the lesion's, or the winning class's,
probability x 255) and <stem>_overlay.png (the mask's outline on the image). One line per image
gives the predicted area (pixels, % of the image, mm^2 when the DICOM has PixelSpacing or
ImagerPixelSpacing) and the largest probability, so an "all black" mask is obvious. Folders are
searched recursively; DICOMs named as PACS exports name them (IM0001, or by UID) are found by their
DICM marker. The output folder must hold no input, so a ground-truth <stem>_mask.png beside a scan
is never overwritten, and no file of an earlier prediction unless --overwrite is given (an image
that then fails keeps none of the earlier files either). A checkpoint saved before the first epoch
is named in a warning. A file that cannot be read, an image whose outputs cannot be written (full
disk, name too long, a file or folder in the way) or a folder that cannot be listed is one FAILED
line on stderr, and the rest go on. Each PNG is written whole or not at all, and an image whose
three PNGs could not all be written keeps none of this run's. `evaluate.py --input` runs this same
command.

Exit codes: 0 done; 1 some files could not be read or written, or folders listed (the rest were done); 2 bad flags
or checkpoint.
"""
from __future__ import annotations

import sys

from engine.checkpoints import CheckpointError
from engine.scans import OUTPUT_KINDS, run_prediction
from readers.mammograms import DataError
from engine.backends import BACKENDS
from engine.devices import AMP_DTYPES, resolve_device
from engine.cli import ArgumentParser, UsageError, run_command


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="predict.py", description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="a checkpoint written by train.py")
    parser.add_argument("--input", nargs="+", required=True, metavar="FILE_OR_DIR",
                        help="DICOM/PNG/JPEG/TIFF/PGM files or folders (searched recursively)")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="where the masks, probability maps and overlays go: a folder holding no input file; a "
                             "folder input's subfolders are kept, and same-named inputs get distinct names (scan_dcm, "
                             "scan_png, scan_png_2)")
    parser.add_argument("--image-size", type=int, metavar="PIXELS", help="square input side, a multiple of 32 "
                        "(default: the size the checkpoint was trained at)")
    parser.add_argument("--tta", action="store_true", help="average the probabilities of each image and its mirror "
                        "image: vertical for mammogram models, horizontal for VOC ones")
    parser.add_argument("--amp", choices=list(AMP_DTYPES), default="none", help="autocast dtype of the forward pass; "
                        "probabilities are computed in fp32 (default: none)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda or cuda:N "
                        "(default: auto)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="how the model runs (runners.py): auto = "
                        "a CUDA graph on a GPU, ONNX Runtime on a CPU when installed, else channels_last (default: "
                        "auto)")
    parser.add_argument("--overlap", type=float, metavar="SHARE", help="overlap of the sliding "
                        "windows of a model trained on patches, [0, 1) (default: the checkpoint's)")
    parser.add_argument("--save", nargs="+", choices=OUTPUT_KINDS, default=list(OUTPUT_KINDS),
                        help="outputs written per image (default: all three, as before)")
    parser.add_argument("--json", metavar="FILE", help="also write one record per image (areas, outputs) to FILE")
    parser.add_argument("--overwrite", action="store_true", help="replace the files of an earlier prediction in "
                        "--output (refused without it)")
    return parser


def main(args) -> int:
    return run_prediction(args.checkpoint, args.input, args.output, image_size=args.image_size,
                          device=resolve_device(args.device), tta=args.tta, amp=args.amp, json_path=args.json,
                          backend=args.backend, overwrite=args.overwrite, overlap=args.overlap,
                          save=tuple(args.save))


if __name__ == "__main__":
    arguments = get_args_parser().parse_args()
    sys.exit(run_command("predict.py", lambda: main(arguments), (UsageError, CheckpointError, DataError)))
