//! One macro for the crate's enum tables ([`DataType`](crate::reduce::DataType),
//! [`ReduceOp`](crate::reduce::ReduceOp), [`Collective`](crate::algo::Collective),
//! [`Algorithm`](crate::algo::Algorithm)): each variant's code, name and aliases are written once,
//! and the list of all variants, `name`, `parse`, `Display` and the decoder from the code follow
//! from it.

/// Declares a fieldless enum from a table of `Variant = code => "name" | "alias"...` rows and
/// generates:
/// - `ALL`: every variant, in table order;
/// - `name(self)`: the first name of its row;
/// - `parse(&str)`: any name or alias of a row, ignoring ASCII case and surrounding space;
/// - the decoder named in the header (`fn from_i32`), from the code back to the variant;
/// - `Display`, which writes the name.
macro_rules! enum_table {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident: $repr:ident, fn $decode:ident {
            $(
                $(#[$vmeta:meta])*
                $var:ident = $code:literal => $text:literal $(| $alias:literal)*
            ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr($repr)]
        $vis enum $name {
            $( $(#[$vmeta])* $var = $code, )+
        }

        impl $name {
            /// Every variant, in the order of its declaration.
            pub const ALL: [$name; <[()]>::len(&[$(enum_table!(@unit $var)),+])] =
                [$($name::$var),+];

            /// Its name, as printed by tools and accepted by [`Self::parse`].
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$var => $text,)+
                }
            }

            /// Parses a name or one of its aliases, ignoring ASCII case and surrounding space.
            pub fn parse(s: &str) -> Option<$name> {
                match s.trim().to_ascii_lowercase().as_str() {
                    $($text $(| $alias)* => Some($name::$var),)+
                    _ => None,
                }
            }

            /// The variant with code `v`, or `None` if there is none.
            pub fn $decode(v: $repr) -> Option<$name> {
                $name::ALL.into_iter().find(|x| *x as $repr == v)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
    (@unit $t:tt) => { () };
}

#[cfg(test)]
mod tests {
    use crate::algo::{Algorithm, Collective};
    use crate::reduce::{DataType, ReduceOp};

    /// Every table: codes are distinct, names and aliases parse back, codes decode back.
    #[test]
    fn tables_round_trip() {
        for d in DataType::ALL {
            assert_eq!(DataType::parse(&d.name().to_uppercase()), Some(d));
            assert_eq!(DataType::from_i32(d as i32), Some(d));
        }
        for o in ReduceOp::ALL {
            assert_eq!(ReduceOp::parse(&format!(" {} ", o.name())), Some(o));
            assert_eq!(ReduceOp::from_i32(o as i32), Some(o));
        }
        for c in Collective::ALL {
            assert_eq!(Collective::parse(c.name()), Some(c));
            assert_eq!(Collective::from_u8(c as u8), Some(c));
        }
        for a in Algorithm::ALL {
            assert_eq!(Algorithm::parse(a.name()), Some(a));
            assert_eq!(Algorithm::from_u8(a as u8), Some(a));
        }
        let mut names: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
        names.dedup();
        assert_eq!(names.len(), Algorithm::ALL.len());
        assert_eq!(DataType::ALL.len(), 10);
        assert_eq!(ReduceOp::ALL.len(), 5);
        assert_eq!(Collective::ALL.len(), 14);
        assert_eq!(Algorithm::ALL.len(), 15);
        // NCCL's numbering, which the C ABI relies on.
        assert_eq!(DataType::BF16 as i32, 9);
        assert_eq!(ReduceOp::Avg as i32, 4);
        assert_eq!(DataType::from_i32(10), None);
        assert_eq!(ReduceOp::parse("average"), Some(ReduceOp::Avg));
        assert_eq!(DataType::parse("fp16"), Some(DataType::F16));
        assert_eq!(Algorithm::parse("one-shot"), Some(Algorithm::Direct));
        assert_eq!(Collective::parse("nope"), None);
        assert_eq!(
            format!("{} {}", DataType::BF16, Algorithm::HierMul),
            "bfloat16 hier-mul"
        );
    }
}
