//! Exact money amounts and ISO 4217 currency codes.

use std::fmt;
use std::ops::{Add, AddAssign, Neg, Sub, SubAssign};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Units of 1/10000 of a currency unit per whole unit.
pub const MONEY_SCALE: i64 = 10_000;

/// An exact amount in 1/10000 of a currency unit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(pub i64);

/// Why a decimal string is not a valid amount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// Not `digits[.digits]`.
    #[error("not a non-negative decimal number")]
    NotDecimal,
    /// More than four fractional digits.
    #[error("more than 4 fractional digits")]
    TooPrecise,
    /// Does not fit the stored range.
    #[error("amount out of range")]
    OutOfRange,
}

impl Money {
    /// Zero.
    pub const ZERO: Money = Money(0);

    /// Parses a non-negative decimal such as `49.90`, exact to 4 fractional digits.
    pub fn parse(text: &str) -> Result<Money, MoneyError> {
        let (whole, frac) = match text.split_once('.') {
            Some((w, f)) => (w, Some(f)),
            None => (text, None),
        };
        if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
            return Err(MoneyError::NotDecimal);
        }
        let mut units: i64 = 0;
        for b in whole.bytes() {
            units = units
                .checked_mul(10)
                .and_then(|u| u.checked_add(i64::from(b - b'0')))
                .ok_or(MoneyError::OutOfRange)?;
        }
        // Decimal(18, 4) in ClickHouse holds at most 14 whole digits.
        if units >= 100_000_000_000_000 {
            return Err(MoneyError::OutOfRange);
        }
        let mut frac_units: i64 = 0;
        if let Some(frac) = frac {
            if frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
                return Err(MoneyError::NotDecimal);
            }
            if frac.len() > 4 {
                return Err(MoneyError::TooPrecise);
            }
            for b in frac.bytes() {
                frac_units = frac_units * 10 + i64::from(b - b'0');
            }
            frac_units *= 10_i64.pow(4 - frac.len() as u32);
        }
        Ok(Money(units * MONEY_SCALE + frac_units))
    }

    /// This amount divided by `count`, truncated toward zero to 1/10000; `None` for zero.
    pub fn per(self, count: i64) -> Option<Money> {
        (count != 0).then(|| Money(self.0 / count))
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let scale = MONEY_SCALE as u64;
        write!(f, "{sign}{}.{:04}", abs / scale, abs % scale)
    }
}

impl FromStr for Money {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix('-') {
            Some(rest) => Money::parse(rest).map(|m| -m),
            None => Money::parse(s),
        }
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Add for Money {
    type Output = Money;
    fn add(self, rhs: Money) -> Money {
        Money(self.0 + rhs.0)
    }
}
impl AddAssign for Money {
    fn add_assign(&mut self, rhs: Money) {
        self.0 += rhs.0;
    }
}
impl Sub for Money {
    type Output = Money;
    fn sub(self, rhs: Money) -> Money {
        Money(self.0 - rhs.0)
    }
}
impl SubAssign for Money {
    fn sub_assign(&mut self, rhs: Money) {
        self.0 -= rhs.0;
    }
}
impl Neg for Money {
    type Output = Money;
    fn neg(self) -> Money {
        Money(-self.0)
    }
}

/// An ISO 4217 code: three upper-case ASCII letters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

impl Currency {
    /// US dollars, the default account currency.
    pub const USD: Currency = Currency(*b"USD");

    /// Parses a three-letter upper-case code.
    pub fn parse(text: &str) -> Option<Currency> {
        let bytes: [u8; 3] = text.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(u8::is_ascii_uppercase)
            .then_some(Currency(bytes))
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Currency::parse(&text).ok_or_else(|| serde::de::Error::custom("expected an ISO 4217 code"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exact_amounts() {
        assert_eq!(Money::parse("49.90"), Ok(Money(499_000)));
        assert_eq!(Money::parse("0.0001"), Ok(Money(1)));
        assert_eq!(Money::parse("120"), Ok(Money(1_200_000)));
        assert_eq!(Money::parse("1.23456"), Err(MoneyError::TooPrecise));
        assert_eq!(Money::parse("-1"), Err(MoneyError::NotDecimal));
        assert_eq!(Money::parse("1."), Err(MoneyError::NotDecimal));
        assert_eq!(Money::parse(".5"), Err(MoneyError::NotDecimal));
        assert_eq!(Money::parse("1e3"), Err(MoneyError::NotDecimal));
        assert_eq!(Money::parse("999999999999999"), Err(MoneyError::OutOfRange));
    }

    #[test]
    fn displays_four_decimals_and_divides_truncating() {
        assert_eq!(Money(499_000).to_string(), "49.9000");
        assert_eq!(Money(1).to_string(), "0.0001");
        assert_eq!(Money(100_000).per(3), Some(Money(33_333)));
        assert_eq!(Money(1).per(3), Some(Money(0)));
        assert_eq!(Money(1).per(0), None);
        assert_eq!("-0.5000".parse::<Money>(), Ok(Money(-5_000)));
    }

    #[test]
    fn currency_codes() {
        assert_eq!(
            Currency::parse("BRL").map(|c| c.to_string()),
            Some("BRL".into())
        );
        assert_eq!(Currency::parse("brl"), None);
        assert_eq!(Currency::parse("EURO"), None);
    }
}
