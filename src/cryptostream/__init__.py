"""CryptoStream: real-time crypto market analytics (feeds -> clean trades -> windows -> storage)."""

__version__ = "0.1.0"
