//! CGGM Studio web application.
