"""A MuJoCo backend whose physics blows up: NaN a few steps after a reset with seed 13."""
import numpy as np

from bytemini_driver.mujoco_backend import MujocoDriver


class NanAfterReset(MujocoDriver):
    def reset(self, seed, mirrored, options):
        self.countdown = 10 if seed == 13 else -1
        return super().reset(seed, mirrored, options)

    def advance(self, dt):
        if getattr(self, "countdown", -1) > 0:
            self.countdown -= 1
            if self.countdown == 0:
                self.sim.data.qvel[:] = np.nan
        super().advance(dt)
