"""A clock that tests move by hand (limiters take it instead of time.monotonic)."""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
