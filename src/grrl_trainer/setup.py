import os
from glob import glob

from setuptools import find_packages, setup

package_name = 'grrl_trainer'
# launch/, urdf/ and config/ live at the top of the repository; they are installed into
# this package's share so that $(find-pkg-share grrl_trainer) finds them.
REPO = os.path.relpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob(os.path.join(REPO, 'launch', '*.launch.xml'))),
        ('share/' + package_name + '/config', glob(os.path.join(REPO, 'config', '*.yaml'))),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='GR-RL maintainers',
    maintainer_email='grrl@example.org',
    description='GR-RL application package: datasets and episode recording, mirror augmentation, BC and online steering-RL training, the episode node and the trainer node, in sub-packages by pipeline stage (data, episodes, offline, online, evaluation, reproduce).',
    license='Apache-2.0',
    entry_points={
        'grrl.benchmarks': [
            'data = grrl_trainer.bench.data:main',
            'bc = grrl_trainer.bench.bc:main',
            'critic = grrl_trainer.bench.critic:main',
            'online = grrl_trainer.bench.online:main',
        ],
        'console_scripts': [
            'grrl-run-episodes = grrl_trainer.episodes.run_episodes:main',
            'run_episodes = grrl_trainer.episodes.run_episodes:main',
            'episode_node = grrl_trainer.episodes.episode_node:main',
            'trainer_node = grrl_trainer.online.trainer_node:main',
            'grrl-bench = grrl_trainer.bench.cli:main',
            'grrl-data = grrl_trainer.data.cli:main',
            'grrl-train-bc = grrl_trainer.offline.bc:main',
            'grrl-curve = grrl_trainer.offline.curve:main',
            'grrl-eval = grrl_trainer.evaluation.evaluate:main',
            'grrl-critic = grrl_trainer.offline.critic_train:main',
            'grrl-offline = grrl_trainer.offline.pipeline:main',
            'grrl-online = grrl_trainer.online.trainer:main',
            'grrl-reproduce = grrl_trainer.reproduce:main',
        ],
    },
)
