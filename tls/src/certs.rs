//! Certificates for a new cluster. (Being written.)
