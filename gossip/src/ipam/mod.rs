//! IP address management without a datastore (sans-IO).
