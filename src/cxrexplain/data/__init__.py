"""NIH layout and sources, the synthetic mirror, download, sampling into a cache, the patient-wise split."""
