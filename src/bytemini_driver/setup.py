import os
from glob import glob

from setuptools import find_packages, setup

package_name = 'bytemini_driver'
# launch/, urdf/ and config/ live at the top of the repository; they are installed into
# this package's share so that $(find-pkg-share bytemini_driver) finds them.
REPO = os.path.relpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/urdf', glob(os.path.join(REPO, 'urdf', '*.urdf'))),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='GR-RL maintainers',
    maintainer_email='grrl@example.org',
    description='ByteMini-v2 robot description helpers, driver interface and backends (MuJoCo simulation, ros2_control topic bridge), cameras, proprioception and the simulated shoe-lacing scene.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'grrl-urdf = bytemini_driver.description:main',
            'driver_node = bytemini_driver.driver_node:main',
            'expert_node = bytemini_driver.expert_node:main',
            'grrl-expert-eval = bytemini_driver.rollout:main',
        ],
        'grrl.benchmarks': [
            'sim = bytemini_driver.bench:main',
        ],
        'bytemini_driver.backends': [
            'mujoco = bytemini_driver.mujoco_backend:MujocoDriver',
            'topic_bridge = bytemini_driver.topic_bridge_backend:TopicBridgeDriver',
        ],
    },
)
