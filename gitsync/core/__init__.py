"""The core: what gitsync knows without touching the world. The desired objects and how documents
are read into them, the live state as data, actions and plans, statuses, labels, errors, the
agent's configuration and policy. Pure, apart from reading the files it is given."""
