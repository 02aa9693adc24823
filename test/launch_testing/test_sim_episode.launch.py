"""One scripted-expert episode of the simulated graph, checked with launch_testing.

launch_testing twin of test/integration/test_sim_episode.py: the same launch/sim.launch.xml
(driver, episode node, scripted expert, run_episodes client) runs one episode, which must
succeed; run_episodes then exits and, being required, shuts the launch down with exit code 0.

Run it inside a sourced ROS 2 install that has launch_testing (pytest in this repo does not
collect test/launch_testing, see pytest.ini):

    launch_test test/launch_testing/test_sim_episode.launch.py
"""
import os
import unittest

from ament_index_python.packages import get_package_share_directory
import launch
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import AnyLaunchDescriptionSource
import launch_testing
import launch_testing.actions
import launch_testing.asserts
import pytest

EXPECTED = 'episode 1/1 seed 0: SUCCESS'


@pytest.mark.launch_test
def generate_test_description():
    # $(find-pkg-share grrl_trainer)/launch/sim.launch.xml
    sim = os.path.join(get_package_share_directory('grrl_trainer'), 'launch', 'sim.launch.xml')
    return launch.LaunchDescription([
        IncludeLaunchDescription(
            AnyLaunchDescriptionSource(sim),
            launch_arguments={
                'episodes': '1', 'seed': '0', 'real_time_factor': '2.0',
            }.items(),
        ),
        launch_testing.actions.ReadyToTest(),
    ])


class TestEpisode(unittest.TestCase):

    def test_episode_succeeds(self, proc_output, proc_info):
        proc_output.assertWaitFor(EXPECTED, process='run_episodes', timeout=180,
                                  stream='stdout')
        # let run_episodes exit on its own (it ends the launch) rather than being SIGINTed
        proc_info.assertWaitForShutdown(process='run_episodes', timeout=30)


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):

    def test_exit_codes(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0])
