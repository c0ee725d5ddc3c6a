"""Address flags from <linux/if_addr.h>: what netlink says about an address's state.

Shared by the code that waits for a usable address (links.py), publishes only usable
ones (phonebook/records.py) and reports them (doctor.py), so they agree on "usable".
"""

from __future__ import annotations

IFA_F_TEMPORARY = 0x01
IFA_F_NODAD = 0x02
IFA_F_OPTIMISTIC = 0x04
IFA_F_DADFAILED = 0x08
IFA_F_DEPRECATED = 0x20
IFA_F_TENTATIVE = 0x40
IFA_F_PERMANENT = 0x80
