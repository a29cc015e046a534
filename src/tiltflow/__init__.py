"""tiltflow: fiducial alignment and reconstruction of electron-tomography tilt series."""

__version__ = "0.1.0"
