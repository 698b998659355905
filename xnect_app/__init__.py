"""xnect_app: real-time multi-person 3D human pose estimation (XNect on SelecSLS)."""
__version__ = "0.1.0"
