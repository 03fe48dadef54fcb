//! The executor: runs one rank's Program over its links.
