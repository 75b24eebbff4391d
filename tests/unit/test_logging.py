"""leveret's loggers form one tree under "leveret" and configure nothing.

The stdlib's advice for libraries: name loggers by module, add no handlers
(not even a NullHandler, which would silence Python's last-resort handler),
set no levels. An unconfigured program then sees leveret's warnings and
errors on stderr and nothing below; configuring "leveret" controls it all.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil

import leveret


def test_every_leveret_logger_is_an_unconfigured_child_of_leveret() -> None:
    for module in pkgutil.walk_packages(leveret.__path__, "leveret."):
        if module.name.startswith(("leveret.testing", "leveret.telemetry._")) or (
            module.name.endswith("__main__")
        ):
            continue  # pytest's plugin, scripts, and the OpenTelemetry-only modules
        importlib.import_module(module.name)
    names = {
        name
        for name, logger in logging.Logger.manager.loggerDict.items()
        if name.split(".")[0] == "leveret" and isinstance(logger, logging.Logger)
    }
    assert {"leveret.connection", "leveret.consumer", "leveret.rpc", "leveret.service"} <= names
    for name in names | {"leveret"}:
        logger = logging.getLogger(name)
        assert logger.handlers == [], name
        assert logger.level == logging.NOTSET, name
        assert logger.propagate, name
