"""Old import path, kept for one release: use ``agent.evals.osworld_agent``."""
from agent.evals.osworld_agent import *  # noqa: F401,F403
from agent.evals.osworld_agent import KimiCuaKimiRunnerAgent, KimiCuaOSWorldAgent  # noqa: F401
