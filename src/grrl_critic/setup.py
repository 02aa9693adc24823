import os

from setuptools import find_packages, setup

package_name = 'grrl_critic'
# launch/, urdf/ and config/ live at the top of the repository; they are installed into
# this package's share so that $(find-pkg-share grrl_critic) finds them.
REPO = os.path.relpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='GR-RL maintainers',
    maintainer_email='grrl@example.org',
    description='GR-RL distributional critic (Q-chunking, categorical values in [0, 1]), TD3+BC offline training, task progress and data filtering, live progress node.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'progress_node = grrl_critic.progress_node:main',
        ],
    },
)
