"""Explanations: the batched CAM family (``cam``) and captum attribution baselines (``attributions``)."""
