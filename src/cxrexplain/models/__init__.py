"""Backbones with the study's head and their CAM target layers; the LightningModule."""
