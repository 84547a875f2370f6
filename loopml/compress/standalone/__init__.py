"""The standalone example ``loopml export`` copies next to the exported network (``predict.py``: no loopml import)."""
