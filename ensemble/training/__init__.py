"""Training tools for the ensemble's members: data, augmentation, self-blended
images, SSIM-mask blackout, per-member recipes, the training loop,
calibration and export to the ``weights/`` layout.

Pure like the rest of :mod:`ensemble`: never imports django or platform.
"""
