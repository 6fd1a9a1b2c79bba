"""Figures and the HTML report: loss curves, monitors, attention maps, t-SNE, neighbours."""
