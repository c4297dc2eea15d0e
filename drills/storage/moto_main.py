"""The embedded S3 server's process: moto's server mode, with restores from an archive class
that take time as AWS's do.

moto keeps an archived object's restore as a state (``s3::keyrestore``: in progress, then
restored) whose pace its state manager sets (``/moto-api/state-manager/set-transition``:
immediate by default, or after a number of seconds). Its clock starts when the object was
written, not when the restore was asked for, so an object written long before would be
restored at once: here a restore request starts the clock, as on AWS. `EmbeddedS3` runs this
module (``python -m drills.storage.moto_main -H HOST -p PORT``) and sets the pace.
"""

from __future__ import annotations

import sys
from datetime import datetime


def restore_clock_starts_at_the_request() -> None:
    """Make moto's restore of an archived object start in progress, from the request."""
    from moto.s3.models import FakeKey

    original = FakeKey.restore

    def restore(self: FakeKey, days: int) -> None:
        if self._expiry is None:  # a first request; a repeated one does not start it again
            self.status = "IN_PROGRESS"
            self._time_progressed = datetime.now()
        original(self, days)

    FakeKey.restore = restore


def main() -> None:
    """Run moto's server with the arguments of this process."""
    from moto import server

    restore_clock_starts_at_the_request()
    server.main(sys.argv[1:])


if __name__ == "__main__":
    main()
