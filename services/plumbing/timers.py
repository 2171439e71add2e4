"""A nameko timer whose interval comes from config; 0 or less disables it.

Like every nameko timer it fires in each running instance, so the work it drives must be
safe to run concurrently (row locks with SKIP LOCKED, decisions from the row's state).
"""
from nameko.timer import Timer


class ConfigurableTimer(Timer):
    def __init__(self, interval_key: str, default: float, **kwargs):
        self.interval_key = interval_key
        self.default_interval = default
        super().__init__(interval=default, **kwargs)

    def setup(self):
        super().setup()
        self.interval = float(self.container.config.get(self.interval_key, self.default_interval) or 0)

    def start(self):
        if self.interval > 0:
            super().start()

    def stop(self):
        if self.gt is not None:
            super().stop()

    def kill(self):
        if self.gt is not None:
            super().kill()


configurable_timer = ConfigurableTimer.decorator
