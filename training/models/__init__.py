"""Network definitions of the training package (``sense_training.models``).

The labeler is a timm EfficientNetV2 built by :func:`sense_training.labeler.build_labeler`;
the autoencoder / β-VAE lives in :mod:`sense_training.models.autoencoder`.
"""
