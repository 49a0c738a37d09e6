"""Measures of explanations, one module per family; :mod:`.registry` lists the per-image measures.

Families: :mod:`.localisation` (maps against the Pneumonia boxes), :mod:`.faithfulness` (does removing what the map
points at change the model's output?), :mod:`.complexity` (how concentrated a map is), :mod:`.sanity` (do maps depend
on the learned weights and on the labels?), :mod:`.consistency` (do two architectures' maps agree?) and
:mod:`.statistics` (patient-clustered intervals and paired tests). :mod:`.ordering` breaks ties wherever pixels are
ranked. Importing this package imports none of them (``statistics`` is used by the classification report without
torch-heavy imports).
"""
