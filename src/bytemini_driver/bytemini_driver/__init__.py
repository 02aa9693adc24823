"""ByteMini-v2 robot description helpers, driver interface and backends (MuJoCo simulation, ros2_control topic bridge), cameras, proprioception and the simulated shoe-lacing scene."""
