"""LeWorldModel (LeWM): a JEPA world model trained from pixels with SIGReg, planned with CEM."""

__version__ = "0.1.0"
