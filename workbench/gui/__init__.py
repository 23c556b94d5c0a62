"""The desktop window (PySide6 + pyqtgraph). A thin face of ``workbench.core``: no training logic here."""
