"""Datasets: the VOC-layout reader (`voc`), the procedural demo generator (`demo`), the
pre-flight consistency check (`check`) and content manifests (`manifest`), VOC's train_aug list
and SBD masks (`prepare_voc`, `lists/`), MS-COCO conversion (`coco`, streaming in `coco_json`),
augmentation (`transforms`), the training sets (`labelled`) and the inference image loader
(`loading`). Only `labelled` and `loading` import torch (they build torch Datasets and
DataLoaders); the others serve CRF, evaluation and data-check processes without it."""
