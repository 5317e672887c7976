"""Datasets: the VOC-layout reader (`voc`), the procedural demo generator (`demo`) and the
pre-flight consistency check (`check`). None of these modules imports torch."""
