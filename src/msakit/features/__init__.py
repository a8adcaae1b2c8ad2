"""Feature extraction: raw inputs (text, later audio and video) -> arrays for the Batch contract."""
