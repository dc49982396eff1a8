"""Tools for agents, one LangChain tool per module."""
