"""Pictures: the iso-CAR ranking plot, its example curves, and the labels that keep generator names readable.
"""
