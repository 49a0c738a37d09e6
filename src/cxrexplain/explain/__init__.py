"""Explanations: the batched CAM family (``cam``) and captum attribution baselines (``attributions``), their measures
(``measures``), a split explained and measured (``evaluate``; ``pipeline`` for stage explain), galleries
(``gallery``), two architectures' agreement (``agreement``, for stage consistency) and one image (``single``)."""
