"""SENSE training package (imported as ``sense_training``): torch/timm models, losses, trainers and
ONNX export. Heavy imports (torch, timm, onnx) happen in the submodules that need them."""
