-- Creates the two databases of the audit trail. The postgres image runs this
-- once, when it starts on an empty data volume (docker-entrypoint-initdb.d);
-- delete the volume (`just down -v`) to run it again. Tables are not made
-- here: each service applies its own migrations when it starts.
CREATE DATABASE accounts;
CREATE DATABASE audit;
