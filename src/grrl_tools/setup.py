from setuptools import find_packages, setup

package_name = 'grrl_tools'

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
    description='Tooling that knows nothing of GR-RL: grrl-launch and its launch-file parser, node start-up, image codec, config dataclasses as CLI flags and node parameters, the test harness.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'grrl-launch = grrl_tools.launcher:main',
        ],
    },
)
