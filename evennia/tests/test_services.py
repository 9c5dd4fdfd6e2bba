"""The service plugin refuses to dial the game's own internal web port."""

import unittest
from types import SimpleNamespace

from worldbridge_evennia import conf as _conf
from worldbridge_evennia.services import clashing_web_port


def make_conf(line):
    return _conf.from_mapping(lambda name, default: line if name == "WORLDBRIDGE_LINE"
                              else default)


class ClashTest(unittest.TestCase):
    def test_stock_evennia_and_the_default_line_port_clash(self):
        stock = SimpleNamespace(WEBSERVER_ENABLED=True, WEBSERVER_PORTS=[(4001, 4005)])
        self.assertEqual(clashing_web_port(make_conf("127.0.0.1:4005"), stock), 4005)
        self.assertEqual(clashing_web_port(make_conf("localhost:4005"), stock), 4005)

    def test_no_clash(self):
        moved = SimpleNamespace(WEBSERVER_ENABLED=True, WEBSERVER_PORTS=[(4001, 4007)])
        self.assertIsNone(clashing_web_port(make_conf("127.0.0.1:4005"), moved))
        stock = SimpleNamespace(WEBSERVER_ENABLED=True, WEBSERVER_PORTS=[(4001, 4005)])
        self.assertIsNone(clashing_web_port(make_conf("127.0.0.1:4015"), stock))
        self.assertIsNone(clashing_web_port(make_conf("10.0.0.2:4005"), stock))
        self.assertIsNone(clashing_web_port(make_conf(""), stock))
        off = SimpleNamespace(WEBSERVER_ENABLED=False, WEBSERVER_PORTS=[(4001, 4005)])
        self.assertIsNone(clashing_web_port(make_conf("127.0.0.1:4005"), off))


if __name__ == "__main__":
    unittest.main()
