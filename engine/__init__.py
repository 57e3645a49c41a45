"""The engine, in layers (README "Architecture"): ``domain`` and ``config`` at the bottom;
``vision``, ``index`` and ``store`` above them, independent of each other; ``service`` on top."""
