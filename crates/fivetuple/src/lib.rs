//! fivetuple
