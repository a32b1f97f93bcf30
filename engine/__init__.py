"""The run side: what the commands (train, evaluate, predict, crossval, export, benchmark) share.

  cli, devices, measure     flags, one-line errors and stop signals, --device/--amp/torchrun, timing and FLOPs
  setup                     the parts of a training run built from its flags
  checkpoints, run_folder   the checkpoint format and the run's folder (no run's work is ever lost)
  inference, backends       a model's logits for batches and whole images; eager, CUDA graph or ONNX
  windows                   sliding-window prediction by a network trained on patches (torch only)
  scans                     image files in, mask files out (predict.py)
  tables                    the printed tables of evaluate.py (Tables 2-4)
  panels, charts            pictures of predictions (Fig. 7-11) and of a cross-validation

Imported only by the commands and bench/; imports the paper's files and readers/, never a command.
"""
