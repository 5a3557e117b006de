"""The process side: model artifacts, the Triton launcher, electron-serve."""
