"""Datasets: the VOC-layout reader (`voc`), the procedural demo generator (`demo`), the
pre-flight consistency check (`check`), augmentation (`transforms`), the pixel-labelled training
set (`labelled`) and the inference image loader (`loading`). `voc`, `demo`, `check` and
`transforms` do not import torch (CRF and evaluation processes use them); `labelled` and
`loading` build torch Datasets and DataLoaders."""
