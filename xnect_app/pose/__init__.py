"""Geometry of XNect's post-processing (numpy/scipy, no torch).

targets.py   Stage I training targets (heatmaps, PAFs, 3D pose encodings): the map contract
peaks.py     heatmap peaks with sub-cell refinement
paf.py       multi-person grouping with part affinity fields
readout.py   3D read-out and the Stage II input tensor
decode.py    maps -> people in one call
root.py      camera-space root translation from 2D/3D agreement
one_euro.py  One Euro smoothing
tracking.py  identity tracking with per-track smoothing and bone lengths
kinematics.py, ik.py  rest pose, forward kinematics, skeleton fitting
synthetic.py random plausible people for tests, benchmarks and training
"""
