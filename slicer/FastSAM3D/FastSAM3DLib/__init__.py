"""Qt- and Slicer-free client logic of the FastSAM3D Slicer module."""
