-- Values the service keeps for itself, by name: `hashid_salt`, the salt of the public IDs
-- when HASHID_SALT is not set.
CREATE TABLE service_settings (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
