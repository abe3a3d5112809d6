"""Data sets and loaders: labelled image folders, ImageNet labels, text."""
