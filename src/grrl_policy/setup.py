import os
from glob import glob

from setuptools import find_packages, setup

package_name = 'grrl_policy'
# urdf/ lives at the top of the repository; the default robot's URDF is installed into this
# package's share (grrl_policy.robot.default_urdf_path), so the policy needs no driver package.
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
    description='The GR-RL vision-language-action policy: Mixture-of-Transformers backbone, flow-matching action expert, noise predictor, jerk-constrained trajectory optimizer and the policy node.',
    license='Apache-2.0',
    entry_points={
        'grrl.benchmarks': [
            'policy = grrl_policy.bench:main',
        ],
        'console_scripts': [
            'policy_node = grrl_policy.policy_node:main',
        ],
    },
)
