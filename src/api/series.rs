//! `GET /api/v1/series`: a device's measurements in time buckets, for charts.
//!
//! Answers are bounded: a request whose range, bucket size and number of names would give
//! more than the configured number of points is refused with the smallest `every` that fits,
//! so a dashboard cannot ask for a week at one-second buckets by accident.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, State};
use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};

use crate::admin::{ApiKey, Scope};
use crate::api::ApiSettings;
use crate::api::{devices, params};
use crate::error::{AppError, ErrorBody};
use crate::store::series::{self, Aggregate, SeriesQuery};
use crate::time_format::format_time;

/// Names one request may ask for.
pub const MAX_NAMES: usize = 100;
const DEFAULT_RANGE: TimeDelta = TimeDelta::hours(24);
const MIN_EVERY: TimeDelta = TimeDelta::seconds(1);
const MAX_EVERY: TimeDelta = TimeDelta::days(1000);

/// Query parameters (documentation only: parsing is by hand, to allow repeated `name`).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct SeriesParams {
    /// The device URN.
    #[param(
        required = true,
        min_length = 1,
        pattern = "^[^\\u0000]*$",
        max_length = 1000
    )]
    device: String,
    /// Measurement names: repeat the parameter or separate with commas.
    #[param(required = true, explode = true, min_items = 1, max_items = 100, value_type = Vec<NameParam>, inline)]
    name: Vec<String>,
    /// Start, inclusive (RFC 3339; default: 24 hours before `to`).
    #[param(format = DateTime)]
    from: Option<String>,
    /// End, exclusive (RFC 3339; default: now).
    #[param(format = DateTime)]
    to: Option<String>,
    /// Bucket size: a number and s, m, h or d, e.g. `30s`, `5m`, `1h`, `1d` (default 5m; at
    /// most 1000 days). Other humantime spellings (`1day`, `90min`) work too.
    #[param(pattern = "^[1-9][0-9]{0,2}(s|m|h|d)$")]
    every: Option<String>,
    /// How values in a bucket combine: avg (default), min, max, sum, count, first, last.
    #[param(pattern = "^(avg|min|max|sum|count|first|last)?$")]
    agg: Option<String>,
    /// Empty buckets: left out (`none`, the default), `null`, or `previous` (the last value
    /// before).
    #[param(pattern = "^(none|null|previous)?$")]
    fill: Option<String>,
}

/// A measurement name in `name` (no commas: they separate names). Documentation only.
pub struct NameParam;

impl utoipa::PartialSchema for NameParam {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .min_length(Some(1))
            .max_length(Some(1000))
            .pattern(Some("^[^,\\u0000]*[^,\\s\\u0000][^,\\u0000]*$"))
            .into()
    }
}

impl ToSchema for NameParam {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    None,
    Null,
    Previous,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Point {
    /// Start of the bucket.
    time: String,
    /// Null for an empty bucket filled with `fill=null` (or `previous` with nothing before).
    #[schema(nullable = true)]
    value: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Series {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<String>,
    points: Vec<Point>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SeriesAnswer {
    device: String,
    from: String,
    to: String,
    /// Bucket size in seconds.
    every_seconds: i64,
    agg: String,
    series: Vec<Series>,
}

/// Bucketed values of one or more measurement names of a device.
#[utoipa::path(
    get, path = "/series", tag = "series",
    params(SeriesParams),
    responses(
        (status = 200, body = SeriesAnswer),
        (status = 400, description = "A parameter is missing or invalid", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        (status = 422, description = "The answer would exceed the point limit", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn series(
    State(pool): State<PgPool>,
    State(settings): State<ApiSettings>,
    key: ApiKey,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SeriesAnswer>, AppError> {
    key.require(Scope::Read)?;
    let Query(pairs) = query.map_err(|e| AppError::bad_parameter("query", e.body_text()))?;
    let one = |name: &'static str| -> Result<Option<String>, AppError> {
        let mut values = pairs.iter().filter(|(k, _)| k == name);
        let first = values.next().map(|(_, v)| v.clone());
        if values.next().is_some() {
            return Err(AppError::bad_parameter(name, "given more than once"));
        }
        params::text(name, first)
    };

    let device = one("device")?
        .ok_or_else(|| AppError::bad_parameter("device", "required: the device URN"))?;
    let mut names: Vec<String> = Vec::new();
    for (_, value) in pairs.iter().filter(|(k, _)| k == "name") {
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let name = params::text("name", Some(name.to_owned()))?.unwrap_or_default();
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    if names.is_empty() {
        return Err(AppError::bad_parameter(
            "name",
            "required: one or more measurement names (name=a&name=b or name=a,b)",
        ));
    }
    if names.len() > MAX_NAMES {
        return Err(AppError::bad_parameter(
            "name",
            format!("at most {MAX_NAMES} names per request"),
        ));
    }
    let to = params::time("to", one("to")?.as_deref())?.unwrap_or_else(Utc::now);
    let from = params::time("from", one("from")?.as_deref())?.unwrap_or(to - DEFAULT_RANGE);
    if from >= to {
        return Err(AppError::bad_parameter("from", "must be before to"));
    }
    let every = parse_every(one("every")?.as_deref())?;
    let aggregate = match one("agg")? {
        None => Aggregate::Avg,
        Some(a) => Aggregate::parse(&a).ok_or_else(|| {
            AppError::bad_parameter("agg", "expected avg, min, max, sum, count, first or last")
        })?,
    };
    let fill = match one("fill")?.as_deref() {
        None | Some("none") => Fill::None,
        Some("null") => Fill::Null,
        Some("previous") => Fill::Previous,
        Some(_) => {
            return Err(AppError::bad_parameter(
                "fill",
                "expected null or previous (or none, the default)",
            ));
        }
    };

    let device = devices::find(&pool, &device).await?;
    let first_bucket = bucket_start(from, every);
    let buckets_per_name = bucket_count(first_bucket, to, every);
    let points = buckets_per_name.saturating_mul(names.len() as u64);
    let max_points = settings.max_series_points;
    if points > max_points {
        let per_name = (max_points / names.len() as u64).max(1);
        let span = (to - first_bucket).num_microseconds().unwrap_or(i64::MAX);
        let smallest = (span as u64).div_ceil(per_name) / 1_000_000 + 1;
        return Err(AppError::unprocessable(format!(
            "this request would return up to {points} points, more than the limit of \
             {max_points}: use a larger every (at least {smallest}s for this range and \
             {} name(s)), a shorter from/to range, or fewer names",
            names.len()
        )));
    }

    let query = SeriesQuery {
        device_id: device.id,
        names: &names,
        from,
        to,
        every,
        aggregate,
    };
    let mut found = series::buckets(&pool, &query).await?;
    let mut before = if fill == Fill::Previous {
        series::values_before(&pool, device.id, &names, from).await?
    } else {
        HashMap::new()
    };
    let mut units = series::units(&pool, device.id, &names).await?;

    let mut answer = Vec::with_capacity(names.len());
    for name in names {
        let values = found.remove(&name).unwrap_or_default();
        let points = match fill {
            Fill::None => values
                .into_iter()
                .map(|(time, value)| Point {
                    time: format_time(time),
                    value,
                })
                .collect(),
            Fill::Null | Fill::Previous => {
                let mut carried = before.remove(&name);
                let by_time: HashMap<DateTime<Utc>, Option<f64>> = values.into_iter().collect();
                let mut points = Vec::with_capacity(buckets_per_name as usize);
                let mut bucket = first_bucket;
                while bucket < to {
                    let value = match by_time.get(&bucket) {
                        Some(v) => *v,
                        None if fill == Fill::Previous => carried,
                        None => None,
                    };
                    if value.is_some() {
                        carried = value;
                    }
                    points.push(Point {
                        time: format_time(bucket),
                        value,
                    });
                    bucket += every;
                }
                points
            }
        };
        answer.push(Series {
            unit: units.remove(&name),
            name,
            points,
        });
    }
    Ok(Json(SeriesAnswer {
        device: device.urn,
        from: format_time(from),
        to: format_time(to),
        every_seconds: every.num_seconds(),
        agg: aggregate.as_str().to_owned(),
        series: answer,
    }))
}

fn parse_every(text: Option<&str>) -> Result<TimeDelta, AppError> {
    let Some(text) = text else {
        return Ok(TimeDelta::minutes(5));
    };
    let bad = || {
        AppError::bad_parameter(
            "every",
            "expected a duration from 1s to 1000d, e.g. 30s, 5m, 1h, 1d",
        )
    };
    let duration = humantime::parse_duration(text).map_err(|_| bad())?;
    let every = TimeDelta::from_std(duration).map_err(|_| bad())?;
    // Whole seconds keep bucket boundaries readable and the same in every time format.
    if every < MIN_EVERY || every > MAX_EVERY || every.subsec_nanos() != 0 {
        return Err(bad());
    }
    Ok(every)
}

/// The start of the bucket holding `time`: the Unix epoch plus a whole number of `every`,
/// exactly as PostgreSQL's `date_bin(every, time, 'epoch')` computes it.
fn bucket_start(time: DateTime<Utc>, every: TimeDelta) -> DateTime<Utc> {
    let stride = every.num_microseconds().unwrap_or(i64::MAX);
    let micros = time.timestamp_micros();
    let start = micros - micros.rem_euclid(stride);
    DateTime::from_timestamp_micros(start).unwrap_or(time)
}

/// Buckets from `first` (a bucket start) up to `to`, exclusive.
fn bucket_count(first: DateTime<Utc>, to: DateTime<Utc>, every: TimeDelta) -> u64 {
    let span = (to - first).num_microseconds().unwrap_or(i64::MAX).max(0) as u64;
    let stride = every.num_microseconds().unwrap_or(i64::MAX).max(1) as u64;
    span.div_ceil(stride)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_align_to_the_epoch() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let every = TimeDelta::minutes(5);
        assert_eq!(
            bucket_start(t("2024-01-01T10:07:30Z"), every),
            t("2024-01-01T10:05:00Z")
        );
        assert_eq!(
            bucket_start(t("1969-12-31T23:58:00Z"), every),
            t("1969-12-31T23:55:00Z")
        );
        let first = bucket_start(t("2024-01-01T10:07:30Z"), every);
        assert_eq!(bucket_count(first, t("2024-01-01T10:15:00Z"), every), 2);
        assert_eq!(bucket_count(first, t("2024-01-01T10:15:01Z"), every), 3);
    }

    #[test]
    fn every_is_bounded() {
        assert_eq!(parse_every(Some("1h")).unwrap(), TimeDelta::hours(1));
        assert!(parse_every(Some("500ms")).is_err());
        assert!(parse_every(Some("1001d")).is_err());
        assert!(parse_every(Some("soon")).is_err());
    }
}
